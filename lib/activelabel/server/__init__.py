"""The ASGI app of ``activelabel serve``: request guard, routes, task guard, status and stop rule.

Kept free of imports: importing a module here must not build the app."""
