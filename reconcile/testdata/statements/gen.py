# Writes the fictional statements of this directory (receipts, people and
# numbers are made up). Run with Debian's python3 and python3-xlwt:
#   /usr/bin/python3 gen.py
import csv, io, json
import xlwt

rows_pre = [
 ["Account Holder:", "Fictional Traders Ltd"],
 ["Short Code:", "600638"],
 ["Account:", "Utility Account"],
 ["Time Period:", "From 01-11-2026 00:00:00 To 30-11-2026 23:59:59"],
 ["Operator:", "Test Operator"],
 ["Date of Report:", "01-12-2026 08:00:00"],
 ["Opening Balance:", "10,000.00"],
 ["Closing Balance:", "6,085.00"],
 ["Total Paid In:", "2,250.00"],
 ["Total Withdrawn:", "-6,165.00"],
 [],
]
header = ["Receipt No.","Completion Time","Initiation Time","Details","Transaction Status","Paid In","Withdrawn","Balance","Balance Confirmed","Reason Type","Other Party Info","Linked Transaction ID","A/C No.","Currency"]
rows = [
 ["TKR0000009","30-11-2026 18:00:00","30-11-2026 18:00:00","Organization Settlement Account to Bank","Completed","","-5000.00","6085.00","true","Funds Transfer","600000 - Fictional Bank","","","KES"],
 ["TKR0000008","29-11-2026 10:00:00","29-11-2026 10:00:00","Reversal of TKR0000003","Completed","","-150.00","11085.00","true","Reversal","254700000103 - Test Payer","TKR0000003","","KES"],
 ["TKR0000007","28-11-2026 09:30:00","28-11-2026 09:30:00","Pay Bill from 254700000107 - Akinyi Otieno Acc. INV-7","Completed","250.00","","11235.00","true","Pay Bill","254700000107 - Akinyi Otieno","","INV-7","KES"],
 ["TKR0000006","27-11-2026 14:00:00","27-11-2026 14:00:00","Business Payment Charge","Completed","","-15.00","10985.00","true","Business Payment Charge","","","","KES"],
 ["TKR0000006","27-11-2026 14:00:00","27-11-2026 14:00:00","Business Payment to 254700000106 - Baraka Kiprono","Completed","","-1000.00","11000.00","true","Business Payment","254700000106 - Baraka Kiprono","","","KES"],
 ["TKR0000005","26-11-2026 12:00:00","26-11-2026 12:00:00","Pay Bill Online from 254700000105 - Wanjiru Mwangi\nvia M-PESA app","Completed","500.00","","12000.00","true","Pay Bill Online","254700000105 - Wanjiru Mwangi","","INV-5","KES"],
 ["TKR0000004","25-11-2026 08:15:00","25-11-2026 08:15:00","Pay Bill from 254700000104 - Otieno Ouma Acc. INV-4","Completed","1,200.00","","11500.00","true","Pay Bill","254700000104 - Otieno Ouma","","INV-4","KES"],
 ["TKR0000003","24-11-2026 16:45:00","24-11-2026 16:45:00","Pay Bill from 254700000103 - Test Payer Acc. INV-3","Completed","300.00","","10300.00","true","Pay Bill","254700000103 - Test Payer","","INV-3","KES"],
 ["TKR0000002","31-13-2026 99:00:00","","Pay Bill from 254700000102 - Broken Row","Completed","100.00","","10000.00","true","Pay Bill","254700000102 - Broken Row","","","KES"],
]
name = "ORG_600638_Utility_Account_20261101-20261130"
# G2 .csv: UTF-8 with a BOM, CRLF, a quoted newline.
buf = io.StringIO()
w = csv.writer(buf, lineterminator="\r\n")
for r in rows_pre: w.writerow(r)
w.writerow(header)
for r in rows: w.writerow(r)
open("pair/" + name + ".csv", "wb").write(b"\xef\xbb\xbf" + buf.getvalue().encode())
# The same rows for the .xlsx the Go test writes with excelize.
json.dump({"preamble": rows_pre, "header": header, "rows": rows}, open("g2-rows.json", "w"), indent=1)
# G2 .xls (BIFF8), amounts as numbers as Excel holds them.
wb = xlwt.Workbook(); sh = wb.add_sheet("Statement")
for i, r in enumerate(rows_pre + [header] + rows):
    for j, c in enumerate(r):
        if j in (5, 6, 7) and i > len(rows_pre) and c:
            sh.write(i, j, float(c.replace(",", "")))
        else:
            sh.write(i, j, c)
wb.save(name + ".xls")

# The newer export: Windows-1252, thousands separators, dd/MM/yyyy, the
# shortcode and period only in the file name.
hdr2 = ["Receipt No","Completion Time","Details","Transaction Status","Paid In (KSHs)","Withdrawn (KSHs)","Balance (KSHs)"]
rows2 = [
 ["TKS0000003","20/11/2026 11:05:09","Pay Bill from 254700000203 - Ren\u00e9e Caf\u00e9 Acc. 77","Completed","12,500.00","","1,262,500.00"],
 ["TKS0000002","19/11/2026 07:00:00","Business Payment to 254700000202 - Juma Ali","Completed","","-2,000.00","1,250,000.00"],
 ["TKS0000001","18/11/2026 23:59:59","Pay Bill from 254700000201 - Jane Doe Acc. 12","Completed","1,252,000.00","","1,252,000.00"],
]
buf = io.StringIO(); w = csv.writer(buf, lineterminator="\r\n"); w.writerow(hdr2)
for r in rows2: w.writerow(r)
open("Statements for 600638 from 2026-11-01 to 2026-11-30.csv", "wb").write(buf.getvalue().encode("cp1252"))

# The Pull Transactions API response: nested arrays, one bad date.
pull = {"ResponseRefID":"fictional-ref-1","ResponseCode":"1000","ResponseMessage":"Success","Response":[[
 {"transactionId":"TKP0000001","trxDate":"2026-11-10T09:00:00+03:00","msisdn":254700000301,"sender":"UNKNOWN","transactiontype":"c2b-pay-bill-debit","billreference":"INV-301","amount":"75.00","organizationname":"Fictional Traders Ltd"},
 {"transactionId":"TKP0000002","trxDate":"2026-11-11T10:30:00+03:00","msisdn":254700000302,"sender":"UNKNOWN","transactiontype":"c2b-buy-goods-debit","billreference":"","amount":"1250","organizationname":"Fictional Traders Ltd"}],
 [{"transactionId":"TKP0000003","trxDate":"not a date","msisdn":254700000303,"amount":"5"}]]}
open("pull-600638-202611.json", "w").write(json.dumps(pull, indent=1) + "\n")

# Any CSV, read with --columns receipt=Ref,time=When,in=Credit KES,out=Debit KES,details=Narrative
buf = io.StringIO(); w = csv.writer(buf, lineterminator="\n")
w.writerow(["Ref","When","Credit KES","Debit KES","Narrative"])
w.writerow(["TKC0000001","2026-11-05 10:00:00","400.00","","Pay Bill from 254700000401 - Test One"])
w.writerow(["TKC0000002","2026-11-06 11:00:00","","250.00","Business Payment to 254700000402 - Test Two"])
open("ledger-600638.csv", "w").write(buf.getvalue())

# The callbacks for the pair, as `tail --export` writes them.
def line(kind, shortcode, tok, tid, body, receipt="", result=""):
    h = {"Nats-Msg-Id": kind + ":" + tid, "Daraja-Kind": kind, "Daraja-Shortcode": shortcode,
         "Daraja-Transaction-Id": tid, "Daraja-Token-Id": tok, "Daraja-Received-At": "2026-12-01T05:00:00Z"}
    if receipt: h["Daraja-Receipt"] = receipt
    if result: h["Daraja-Result-Code"] = result
    return json.dumps({"subject": "daraja.cb.%s.%s.%s" % (kind, shortcode, tok), "headers": h, "body": body}, separators=(",", ":"))

def c2b(tid, when, amount, shortcode="600638", msisdn="254700000199"):
    return {"TransactionType":"Pay Bill","TransID":tid,"TransTime":when,"TransAmount":amount,"BusinessShortCode":shortcode,
            "BillRefNumber":"INV","InvoiceNumber":"","OrgAccountBalance":"","ThirdPartyTransID":"","MSISDN":msisdn,"FirstName":"Test","MiddleName":"","LastName":"Payer"}

def result(conv, receipt, code, params):
    return {"Result":{"ResultType":0,"ResultCode":code,"ResultDesc":"fictional","OriginatorConversationID":"1-1-1","ConversationID":conv,
            "TransactionID":receipt,"ResultParameters":{"ResultParameter":params}}}

out = [
 line("c2b.confirmation","600638","tok_c2breusable00001","TKR0000003", c2b("TKR0000003","20261124164500","300.00",msisdn="254700000103"), "TKR0000003"),
 line("c2b.confirmation","600638","tok_c2breusable00001","TKR0000005", c2b("TKR0000005","20261126120000","500.00",msisdn="254700000105"), "TKR0000005"),
 line("stk.callback","600638","tok_stk0000000000005","ws_CO_26112026120000000700000105",
      {"Body":{"stkCallback":{"MerchantRequestID":"1-5","CheckoutRequestID":"ws_CO_26112026120000000700000105","ResultCode":0,"ResultDesc":"ok",
       "CallbackMetadata":{"Item":[{"Name":"Amount","Value":500.00},{"Name":"MpesaReceiptNumber","Value":"TKR0000005"},{"Name":"TransactionDate","Value":20261126120004},{"Name":"PhoneNumber","Value":254700000105}]}}}}, "TKR0000005", "0"),
 line("b2c.result","600638","tok_b2c0000000000006","AG_20261127_000000000006",
      result("AG_20261127_000000000006","TKR0000006",0,[{"Key":"TransactionAmount","Value":1000},{"Key":"TransactionReceipt","Value":"TKR0000006"},
       {"Key":"ReceiverPartyPublicName","Value":"254700000106 - Baraka Kiprono"},{"Key":"TransactionCompletedDateTime","Value":"27.11.2026 14:00:02"}]), "TKR0000006", "0"),
 line("b2c.result","600638","tok_b2c0000000000010","AG_20261127_000000000010",
      result("AG_20261127_000000000010","TKR0000000",2001,[]), "TKR0000000", "2001"),
 line("reversal.result","600638","tok_rev0000000000008","AG_20261129_000000000008",
      result("AG_20261129_000000000008","TKR0000008",0,[{"Key":"Amount","Value":150},{"Key":"FinalisedTime","Value":20261129100001}]), "TKR0000008", "0"),
 line("c2b.confirmation","600638","tok_c2breusable00001","TKR0000007", c2b("TKR0000007","20261128093000","205.00",msisdn="254700000107"), "TKR0000007"),
 line("c2b.confirmation","600638","tok_c2breusable00001","TKR0000099", c2b("TKR0000099","20261120100000","999.00",msisdn="254700000199"), "TKR0000099"),
 line("c2b.confirmation","600999","tok_c2breusable00002","TKR0000098", c2b("TKR0000098","20261120100000","10.00",shortcode="600999"), "TKR0000098"),
 line("c2b.confirmation","600638","tok_c2breusable00001","TKR0000097", c2b("TKR0000097","20261205100000","20.00"), "TKR0000097"),
 '{"subject":"daraja.missing.stk.callback.600638","headers":{},"body":{"token_id":"tok_x"}}',
 'not json',
]
open("pair/callbacks.ndjson", "w").write("\n".join(out) + "\n")
