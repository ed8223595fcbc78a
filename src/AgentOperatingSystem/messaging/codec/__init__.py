"""The codec: a :class:`~..types.Message` to and from CloudEvents bytes, and what guards it.

* :mod:`.envelope`: Message <-> CloudEvents 1.0 JSON envelope (encode, decode, validate);
* :mod:`.sealing`: the content's compression and AES-256-GCM encryption, content key ids;
* :mod:`.signing`: Ed25519 signatures over a message's canonical bytes, signing key ids;
* :mod:`.keyfiles`: private signing keys in PEM files (mode 0600), held by this process;
* :mod:`.keyring`: public keys and content keys shared through the StorageManager;
* :mod:`.acl`: who may publish and receive which message types;
* :mod:`.security`: :class:`~.security.BusSecurity`, the bus's security hooks, composing them.
"""
