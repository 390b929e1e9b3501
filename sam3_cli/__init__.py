"""The `sam3` command: segment in-process or through a service, run the workers, pre-warm, manage models.

The top layer: it may import everything below it (sam3_core, sam3_serving, encoder_service,
decoder_service, sam3_bench, the sam3_client SDK); nothing imports it.
"""
