"""The codec: a :class:`~..types.Message` to and from CloudEvents bytes (:mod:`.envelope`),
and what guards it on the way: signatures, the key ring and access control (:mod:`.security`).
"""
