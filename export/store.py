"""Store registration for the build pipeline: the serving side's store API (one implementation,
service/store/register.py), used here to register built models."""

from service.store.register import register, sha256, stored_versions

__all__ = ["register", "sha256", "stored_versions"]
