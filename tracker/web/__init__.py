"""HTTP entry point: Starlette routes over the application steps. Nothing imports it but bootstrap."""
