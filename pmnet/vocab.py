"""The byte vocabulary's special ids, shared by the data pipeline and the model.

Ids 0..255 are the byte values themselves, except these three, which the data format
reserves (a document is stored as ``BOS utf8 EOS``, padded with PAD): UTF-8 never produces
bytes 0xFE and 0xFF, and the pipeline drops NUL characters from text. This module
imports nothing, so the data pipeline gets the ids without loading torch or the model.
"""

PAD_ID = 0
"Padding: never a target of the loss (``lm_loss`` ignores it)."
BOS_ID = 254
"Start of a document."
EOS_ID = 255
"End of a document."

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID"]
