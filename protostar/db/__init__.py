"""PostgreSQL: models, engine, migrations. All SQL lives in the ``repo`` modules next to the models."""
