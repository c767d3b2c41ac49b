"""Process mode (`corral serve`): supervisor, dispatcher, replicas, Gunicorn, and the HTTP workers' client."""
