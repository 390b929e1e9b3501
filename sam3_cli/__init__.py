"""The `sam3` command: segment in-process or through a service, run the workers, pre-warm, manage models.

The top layer: it may import everything below it (sam3_core, sam3_serving, encoder_service,
decoder_service, sam3_bench, the sam3_client SDK); nothing imports it.
"""

import os

# gRPC core writes its own log lines to stderr (a busy port, a TLS handshake, a refused connection)
# above the one-line message the command prints. GRPC_VERBOSITY=ERROR (or DEBUG) brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
