"""The toy world: procedurally rendered captioned images, a tiny SD pipeline and evaluators trained on them."""
