from vgg_mobile.cli import main

main(prog_name="vgg-mobile")
