"""The HTTP server: OpenAI's audio API and voxserve's own endpoints over the batching engine.

``create_app(settings)`` (app.py) builds the FastAPI application; ``voxserve serve`` runs it with uvicorn.
"""
