"""Storage: SQLModel tables, the engine, named queries. Nothing here commits; callers own transactions."""
