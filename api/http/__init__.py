"""The HTTP API: ``api.http.app.create_app(services)``; services built by ``api.bootstrap.build_api_services``."""
