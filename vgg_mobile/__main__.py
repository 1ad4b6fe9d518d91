from vgg_mobile.cli.main import main

main(prog_name="vgg-mobile")
