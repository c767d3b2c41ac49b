"""API types: input validation, problem details and the OpenAPI document."""
