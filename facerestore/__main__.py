from facerestore.cli.entry import main

main()
