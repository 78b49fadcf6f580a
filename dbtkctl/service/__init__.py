"""Login items: start dbtkd when the user logs in, on systemd, launchd and Windows.

``installer`` carries out ``dbtkctl service install | uninstall | status`` with the per-OS
``systemd``, ``launchd`` and ``windows`` modules, which render the templates in ``service/``
into a ``plan`` of steps; every OS command goes through ``oscmd.run``. ``activation`` is the
small part ``dbtkctl status`` and ``stop`` use to recognise a socket-activated daemon.
"""
