"""The tuning database (SQLAlchemy), its migrations, the model-layer table, and lookup of the best known config. May import: core, errors, resources."""
