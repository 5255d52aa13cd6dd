"""Models the project keeps for packages it uses: the before/after history of roles (auth groups and their
permissions), beside that of the configuration each app keeps itself."""

from django.contrib.auth.models import Group
from simple_history import register

register(Group, app="playpay", m2m_fields=["permissions"])
