"""A Label Studio ML backend for sam3-service: clicks, boxes and phrases in Label Studio, masks from sam3.

`sam3-label-studio serve --server HOST:PORT` serves Label Studio's ML backend protocol; connect it in
a project's Settings > Model. It depends on the sam3 SDK (`sam3-client`) and waitress only.
"""
