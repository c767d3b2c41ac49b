"""Messages between processes and how they travel (Unix stream sockets)."""
