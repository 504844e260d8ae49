"""The embedded queue (the default mode): ``QueueService``, the asyncio manager inside the Jupyter
server, and its SQLite ``store``."""
