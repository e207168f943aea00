"""Admission policies: which terminals may connect (the ``admission`` setting).

- ``allowlist``: only terminals listed in the configuration or admitted by an administrator;
- ``pending``: an unknown terminal is recorded as pending until an administrator admits it;
- ``open`` (labs): any terminal id, authenticated with the ``default_secret``.
"""

from enum import StrEnum


class AdmissionPolicy(StrEnum):
    ALLOWLIST = "allowlist"
    PENDING = "pending"
    OPEN = "open"


ADMISSION_POLICIES = tuple(policy.value for policy in AdmissionPolicy)
