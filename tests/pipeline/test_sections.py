"""The config sections the pipeline defines for its own stages."""

from __future__ import annotations

import pytest

from vgg_mobile.converters.convert import ConvertOptions
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.pipeline.sections import BenchmarkConfig, ExportConfig, WebExportConfig


def test_benchmark_config_is_validated():
    for kwargs in ({"repeats": 0}, {"threads": 0}, {"images": 0}):
        with pytest.raises(BadInputError, match=f"{next(iter(kwargs))}=0"):
            BenchmarkConfig(**kwargs)


def test_exports_own_their_tfjs_switch():
    assert not ExportConfig().options.tfjs and WebExportConfig().options.tfjs
    assert WebExportConfig().options.flavours == ("float16",)
    with pytest.raises(BadInputError, match=r"never writes TF.js \(\[web_export\] does\)\. Received: tfjs=True"):
        ExportConfig(options=ConvertOptions(tfjs=True))
    with pytest.raises(BadInputError, match="always writes TF.js. Received: tfjs=False"):
        WebExportConfig(options=ConvertOptions(tfjs=False))
    # Defaults are built per instance, never shared or computed once at import.
    assert ExportConfig().options is not ExportConfig().options
