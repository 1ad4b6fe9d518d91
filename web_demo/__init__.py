"""The web demo's static page, shipped as package data of `vgg_mobile.web_demo.page`."""
