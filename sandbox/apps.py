from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "sandbox"
    verbose_name = "Sandbox (demo and test mode)"

    def ready(self) -> None:
        from carriers.adapters import register_adapter
        from carriers.models import Protocol
        from sandbox.adapter import SandboxAdapter

        register_adapter(Protocol.SANDBOX, SandboxAdapter)
