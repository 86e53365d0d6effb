r"""coral's gRPC wire protocol: ``coral_chat.proto`` (package ``coral.chat.v1``, service ``CoralChat``) and its codec.

It sits apart from ``coral.backends`` and ``coral.serving`` because both speak it: the client
(``coral.backends.grpc_client``) and the servers (``coral.serving.grpc_server``, the Ray Serve application) import
it, and neither imports the other. ``codec`` is the one place proto messages meet coral's types.

The Python stubs (``coral_chat_pb2.py``, ``coral_chat_pb2.pyi``, ``coral_chat_pb2_grpc.py``) are generated with
grpcio-tools 1.85.1 and committed, so installing coral needs no build step and Ray Serve's gRPC proxy can import
``coral.wire.coral_chat_pb2_grpc.add_CoralChatServicer_to_server`` on any node. To keep them from drifting,
``tests/serving/test_grpc.py`` regenerates them into a temporary folder and fails unless they equal the committed
files. After editing the proto, regenerate from the repository root with::

    python -m grpc_tools.protoc -I libs --python_out=libs --pyi_out=libs --grpc_python_out=libs \
        libs/coral/wire/coral_chat.proto

(``-I libs`` makes the generated imports read ``from coral.wire import coral_chat_pb2``.)
"""
