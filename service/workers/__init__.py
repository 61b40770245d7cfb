"""Celery: the app, the analysis task (queue ``agent``), the vision tasks (queue ``vision``) and the
Celery vision client. The only Celery code of the project; the packages below `service/` stay free of it."""
