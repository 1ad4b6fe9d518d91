"""The `vgg-mobile` command line, one module per command group."""
