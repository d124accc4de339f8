"""What the paper computes, with no speed code: intervention sites, methods, the best-layer rule."""
