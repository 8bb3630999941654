"""The web console at ``/ui``: server-rendered pages over the admin and audit services.

``custos.console.app`` is the handler; ``pages`` the pages, each calling the same service
functions as the admin API with the signed-in principal; ``sessions`` the sign-in sessions;
``web`` the HTTP plumbing and security headers; ``charts`` the inline SVG charts. Templates and
static assets ship in the package: nothing is loaded from the network.
"""
