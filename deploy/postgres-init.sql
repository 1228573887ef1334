-- Run once by the postgres:15 image of deploy/compose.yaml on a new volume
-- (POSTGRES_USER=prm and POSTGRES_DB=prm already exist by then).
CREATE DATABASE prm_test OWNER prm;
