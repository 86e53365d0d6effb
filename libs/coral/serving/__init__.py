"""What deploys models: the OpenAI-compatible and gRPC servers, Ray Serve applications, cluster control.

Nothing here is imported by the evaluation path unless a config names a served application.
"""
