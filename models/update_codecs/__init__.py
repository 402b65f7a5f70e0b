"""Wire encodings of a device's update, one file per encoding (see ``base.py``).

Adding one: write ``models/update_codecs/<name>.py`` with a ``@register``-ed subclass of
:class:`~models.update_codecs.base.UpdateCodec` and import it below.
"""

from models.update_codecs.base import CODECS, UpdateCodec, codec_names, get_codec, register
from models.update_codecs import fp32  # noqa: F401  (registers "fp32")
from models.update_codecs import fp16  # noqa: F401  (registers "fp16")
from models.update_codecs import int8  # noqa: F401  (registers "int8", "int8_tensor")
from models.update_codecs import topk  # noqa: F401  (registers "topk")

__all__ = ["CODECS", "UpdateCodec", "codec_names", "get_codec", "register"]
