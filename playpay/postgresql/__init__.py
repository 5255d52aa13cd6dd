"""Django's PostgreSQL backend with every wait on the server bounded (see base.py); DATABASES' ENGINE.
listen.py: waiting for another process's commit, woken by LISTEN/NOTIFY; schema.py: SQL migrations run on
PostgreSQL only."""
