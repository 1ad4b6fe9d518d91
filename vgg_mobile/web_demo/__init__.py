"""The in-browser demo: assembling a ready-to-host folder (`build`), and serving it (`serve`).

The static page itself is the project's top-level `web_demo/` folder, installed as the package
data of `vgg_mobile.web_demo.page`.
"""

from vgg_mobile.web_demo.build import assemble_demo, find_bundle, find_int8_tflite
from vgg_mobile.web_demo.serve import exposure_warning, make_server, serve_in_background

__all__ = ["assemble_demo", "exposure_warning", "find_bundle", "find_int8_tflite", "make_server",
           "serve_in_background"]
