"""Messages between processes and how they travel (ZeroMQ over ipc://)."""
