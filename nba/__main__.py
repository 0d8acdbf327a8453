from nba.cli.app import main

main()
