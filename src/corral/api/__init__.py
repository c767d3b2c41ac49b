"""The Flask application: routes, error handling and Swagger UI."""
