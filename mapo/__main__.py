from mapo.cli import main

main()
