"""The task functions: the same code runs in the embedded thread pool and in Celery workers."""
