"""Two ways to run the same task functions: in-process threads, or Celery workers."""
from service.dispatch.base import Dispatcher, make_dispatcher

__all__ = ["Dispatcher", "make_dispatcher"]
