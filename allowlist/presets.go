package allowlist

// presets are the built-in source lists, by name.
//
// safaricom: the addresses Safaricom publishes as the sources of Daraja
// callbacks (C2B validation/confirmation, STK push results, B2C, B2B,
// reversal, transaction status and account balance results). They come from
// the "IP whitelisting" list Safaricom hands out at Daraja go-live and that
// circulates in its developer community and in client libraries (for example
// the SAFARICOM_IPS list of the pesafy package and the ip_whitelist module of
// mpesakit). Safaricom changes its infrastructure without notice: run
// `allowlist.mode: report` for a while after adding an edge, and add what
// the logs show with allowlist.cidrs.
var presets = map[string][]string{
	"safaricom": {
		"196.201.214.200/32",
		"196.201.214.206/32",
		"196.201.213.114/32",
		"196.201.214.207/32",
		"196.201.214.208/32",
		"196.201.213.44/32",
		"196.201.212.127/32",
		"196.201.212.138/32",
		"196.201.212.129/32",
		"196.201.212.136/32",
		"196.201.212.74/32",
		"196.201.212.69/32",
	},
}
