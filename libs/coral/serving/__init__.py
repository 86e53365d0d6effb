"""What deploys models: the OpenAI-compatible and gRPC servers, Ray Serve applications, cluster control.

- ``local.serve_local`` / ``LocalServer``: the embedded engine behind an OpenAI-compatible API (no Ray).
- ``openai_api.build_openai_app``, ``grpc_server.ChatServicer``: the two protocols, in front of any backend.
- ``apps.build_embedded_app``: the embedded engine as a Ray Serve application (sticky sessions, replica ids).
- ``cluster.start_cluster`` / ``stop_cluster``: a Ray cluster on this machine or on Slurm (submitit).
- ``deploy.deploy_applications`` / ``load_applications``: Ray Serve config files rendered and applied.
- ``endpoints.resolve`` / ``backend_for``: an application name or URL -> a ChatBackend.
- ``health.check_health`` / ``status``; ``cli``: the ``coral-serve`` command.

Nothing here is imported by the evaluation path unless a config names a served application.
"""
