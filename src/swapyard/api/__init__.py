"""HTTP surface: OpenAI routes, admin routes, lifespan."""
