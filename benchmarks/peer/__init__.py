"""Peer systems measured next to mpcvit on the same ONNX file (``mpcvit bench --peer spu``)."""
