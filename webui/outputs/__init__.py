"""Everything about finished images: infotext, invisible watermark, and saving to disk."""

from webui.outputs.files import ImageSaver, read_infotext
from webui.outputs.infotext import Infotext, format_infotext, parse_infotext, request_fields_from_params
from webui.outputs.watermark import DEFAULT_PAYLOAD, MIN_WATERMARK_SIDE, embed_watermark, read_watermark

__all__ = [
    "DEFAULT_PAYLOAD",
    "MIN_WATERMARK_SIDE",
    "ImageSaver",
    "Infotext",
    "embed_watermark",
    "format_infotext",
    "parse_infotext",
    "read_infotext",
    "read_watermark",
    "request_fields_from_params",
]
