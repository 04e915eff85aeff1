module github.com/daraja-edge/daraja-edge

go 1.26.8

require (
	github.com/yl2chen/cidranger v1.0.2
	gopkg.in/yaml.v3 v3.0.1
)

require github.com/stretchr/testify v1.8.1 // indirect
