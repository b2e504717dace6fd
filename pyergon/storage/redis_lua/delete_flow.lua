-- delete_flow: a flow id. Reply: 1 if the flow existed.
return delete_everything_of(arg()) and 1 or 0
