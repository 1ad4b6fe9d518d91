"""What an Android app bundles: the README template, shipped as package data of
`vgg_mobile.android_assets`."""
