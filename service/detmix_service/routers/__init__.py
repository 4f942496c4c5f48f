"""The routes, one module per area: health, catalog (recipes, datasets), batches, playground."""
